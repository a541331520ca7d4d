"""The VM-side worker: claims jobs, renders them with diffusers LTX-Video, encodes, uploads."""
