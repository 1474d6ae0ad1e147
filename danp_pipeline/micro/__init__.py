"""The micro edit world and its trained micro-editors: procedural scenes with ground-truth edits
(world), a one-token-per-word CLIP tokenizer for its vocabulary (tokenizer), and the training of
small InstructPix2Pix-architecture editors from scratch (training; ``danp-protect train-editor``),
and where their cross-attention looks against the ground-truth masks (probe)."""
