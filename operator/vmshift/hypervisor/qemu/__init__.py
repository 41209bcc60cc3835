"""The QEMU driver: real guests under QEMU, driven through QMP (see driver.py for the interface)."""
