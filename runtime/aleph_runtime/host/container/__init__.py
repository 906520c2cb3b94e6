"""Dev mode's container: the runtime image as the root of private namespaces.

What `--mode dev` runs the init in, so that "works in dev mode" means "works on the
network" and running a program one did not write is safe:

- rootfs.py: the runtime image (the same squashfs `--mode vm` boots) unpacked once into a
  tree owned by the container's root, cached by the image's sha256;
- cgroups.py: `--memory` and `--vcpus` as the container's cgroup limits (v2 memory.max and
  cpu.max, or v1 memory.limit_in_bytes and cpu.cfs_quota_us), and the OOM kills counted;
- network.py: pasta (Debian's passt) gives the container's network namespace the VM's
  address, route and DNS, and no way to the host's loopback;
- spawn.py: the namespaces (user, mount, PID, IPC, UTS, network, cgroup), the tmpfs overlay
  over the tree, a fresh /proc, a minimal /dev, /sys read-only, the binds, pivot_root, and
  the command (the image's init) as PID 1.

    tree = rootfs.image_tree(rootfs.dev_image("lean"), ids)
    box = Container(ContainerSpec(tree, ["/usr/bin/python3", "-c", "..."], ids=ids), workdir)
    await box.start()       # the command runs; box.warnings says which guarantee is missing
    status = await box.wait()
    await box.kill()        # nothing left: processes, pasta, cgroups, mounts
"""
