"""Measurement: evaluation, faithfulness of maps, rollout and inspection, the attention probe, comparisons."""
