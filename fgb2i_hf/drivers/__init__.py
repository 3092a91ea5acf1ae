"""Drivers: one function per kind of run (data -> targets -> training -> saved model -> evaluation); the recipes in
``recipes/`` only parse a config and call one."""
