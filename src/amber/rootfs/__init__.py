"""Root filesystems: layer unpacking, image config and users, ext4 root disks.

Modules: ``unpack`` (safe OCI unpacking of layers or any tar stream), ``tarstream`` (the tar reader),
``paths`` (in-root path resolution), ``config`` (ImageConfig, User resolution), ``ext4`` (mkfs.ext4 -d),
``image_import`` (reference → ext4 in one call). See docs/oci.md.
"""
