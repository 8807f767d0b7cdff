"""Analysis: threshold calibration and label-feature analysis."""
