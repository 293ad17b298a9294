"""What every facescore service shares: settings, logging, errors, images, ONNX, gRPC bootstrap."""
