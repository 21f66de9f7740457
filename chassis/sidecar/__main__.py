"""Entry point of `python -m chassis.sidecar`."""

from chassis.sidecar._main import main

raise SystemExit(main())
