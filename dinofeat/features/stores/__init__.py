"""Features on disk: arrays with file lists, labelled sets, Parquet shards, the feature cache."""
