"""The runtime: loads `.kiln` artifacts and runs their plans. Never imports the compiler."""
