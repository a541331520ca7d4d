"""ltxv: the shared package of ltx-video-pipeline."""
