"""Pure model of ArmoniK: no I/O here."""
