"""Root filesystems: layers and a target in, a tree or an ext4 disk out. Nothing here talks to a registry.

Modules: ``unpack`` (safe OCI unpacking of layers or any tar stream into a target), ``tarstream`` (the tar
reader), ``paths`` (in-root path resolution), ``users`` (``User`` resolution against a tree's /etc files),
``ext4`` (mkfs.ext4 -d). The image config is ``amber.oci.config``; reference → disk in one call is
``amber.builds.image_import``. See docs/oci.md.
"""
