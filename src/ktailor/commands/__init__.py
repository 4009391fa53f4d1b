"""The developer commands invoke wraps: upgrade, pre-flight, security-update, clean, menuconfig."""
