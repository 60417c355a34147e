"""How results are shown: the report (it reads saved tables, it computes none), its document
blocks, and the figures."""
