"""grading: Scores submitted assignments and publishes the grades."""
