"""Credit-risk MLOps: LendingClub default prediction and risk segmentation."""
