"""Composition root of the `gsal-edge` command: joins the library's, export's, server's and trainer's CLIs."""
