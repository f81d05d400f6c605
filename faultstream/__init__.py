"""faultstream: event-sourced fault tolerance for fleets of test workers."""
