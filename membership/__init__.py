"""The membership-inference audit of a Textual Inversion embedding (privacy.py): can someone who holds the model
and the embedding tell which images it was trained on? The loss attack (Carlini et al. 2023) and the
difficulty-calibrated one (Watson et al. 2022), reported as AUC with DeLong's interval and as the true-positive
rate at low false-positive rates (Carlini et al. 2022)."""
