"""DC2 unbinned event lists (FITS/HDF5). Placeholder: the binning issue owns this module.

Column contract (DESIGN §7): ``Energies`` (keV), ``TimeTags`` (s), ``Phi`` (rad),
``Chi local``/``Psi local`` (rad), ``Chi galactic``/``Psi galactic`` (l, b), ``Xpointings``/
``Ypointings``/``Zpointings`` (N×2), ``Distance`` (cm).
"""
