"""What runs inside the guest and how it is attached: probes, host devices, VMM configs, root filesystems."""
