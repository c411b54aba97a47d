"""Using a trained model: evaluate, predict (photos, videos, GeoTIFFs, autolabel), export (ONNX, INT8,
torch.export, the model folder), the Hugging Face hub and the web demo."""
