"""Directions in the residual stream: extraction, steering at inference, abliteration of the weights."""
