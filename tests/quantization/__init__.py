"""Tests of the quantization methods (stage 7): each method against its dequantized reference."""
