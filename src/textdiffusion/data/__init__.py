"""Tokenizers, corpora and packing of documents into fixed-length training chunks."""
