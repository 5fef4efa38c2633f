"""Operator tables of the app runtimes a .ptl can be checked for (data), and derive.py that wrote them."""
