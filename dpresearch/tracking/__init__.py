"""What a run leaves behind: logger set-up, per-epoch metrics, throughput, summary.json."""
