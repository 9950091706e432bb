"""The dock widgets: Fuse layers, Fine-tune, Evaluate fusion; ``_common`` holds the layer
pickers, saved settings and the background-job runner they share."""
