"""whaleid service: FastAPI on onnxruntime and FAISS. Never imports torch, timm or ``training``."""
