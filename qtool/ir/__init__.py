"""The graph layer, the only code that touches ONNX protobuf: load and save (`graph`, with
`external_data`), checks of a user's model (`checks`), layer weight layouts (`layers`), graph
patterns the plan places quantizers by (`patterns`), ranges derived through monotonic ops
(`ranges`), and the QDQ model built from a pair (`qdq`)."""
