"""Models: the wav2vec 2.0 context encoder and the SDETalk networks."""
