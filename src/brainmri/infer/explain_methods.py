"""The maps `explain` can draw, named where reading them imports no PyTorch (the web service
checks `/v1/explain?method=` before Grad-CAM, which needs PyTorch, is ever loaded)."""

METHODS = ("gradcam", "occlusion")
"""What `explain` can draw: Grad-CAM, or the occlusion-sensitivity map (infer/gradcam.py)."""
