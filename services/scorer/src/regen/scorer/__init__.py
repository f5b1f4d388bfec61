"""The scorer: CLIP, DINOv2 and SSIM similarity between a reference and candidates."""
