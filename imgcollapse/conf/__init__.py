"""The kit's Hydra configs, a package so an installed kit finds them (`pkg://imgcollapse.conf`)."""
