"""File input and output: histograms, event lists, orientation files, downloads."""
