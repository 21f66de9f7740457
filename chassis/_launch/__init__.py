"""The launchers behind the `chassis` CLI: `run`, `up`, `new` and `demo`.

Only the CLI imports this package; it may start `chassis.sidecar` processes, the chassis core never does.
"""
