"""The engine: DistributedJobManager composed of its run state, dispatch, polling, supervision,
retries, health monitoring and user control.  Over the ledger and everything below."""
