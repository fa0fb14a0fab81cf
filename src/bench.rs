//! `conduit bench`: throughput measured against raw baselines in the same run.
