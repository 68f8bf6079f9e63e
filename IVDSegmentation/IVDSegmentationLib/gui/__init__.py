"""The module's GUI parts (Qt), kept out of IVDSegmentation.py so that the module file stays thin: the training
section, the DICOM database dialog and the timer that follows worker jobs. Only the Slicer application imports
this package; everything below it (IVDSegmentationLib) runs without Qt."""
