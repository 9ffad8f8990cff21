"""The KPA autoscaler: concurrency metrics → desired scale per revision."""
