"""imgcollapse's Hydra sweeper for studies (`hydra/sweeper=imgcollapse_study`): a given list of jobs, not a grid."""
