"""rxstreamer: DCGM GPU telemetry from files to a message queue, as an RxPY pipeline."""
