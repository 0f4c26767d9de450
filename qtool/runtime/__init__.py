"""onnxruntime: sessions and taps on intermediate tensors (`sessions`), streamed per-channel
statistics (`channel_stats`), the segment-by-segment runner (`segmented`), and the check for ops
onnxruntime cannot run (`custom_ops`). The only package that imports onnxruntime at its top."""
