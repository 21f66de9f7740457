"""assessment: Learners submit assignments and read them back, graded once grading has scored them."""
