"""imgcollapse: train each generation of an image generator on the last one's output and measure what is lost."""

__version__ = "0.3.0"
