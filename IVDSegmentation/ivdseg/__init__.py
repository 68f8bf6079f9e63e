"""ivdseg: the pure core of IVDSegmentation (networks, datasets, training, inference).

This package never imports slicer, qt, ctk or vtk; TensorFlow and Keras are imported lazily, inside
the functions that need them, so that light tools (dataset export, the Slicer module) load without them.
"""

__version__ = "0.1.0"
