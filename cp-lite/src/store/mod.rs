//! Persistent and in-memory storage of resources, behind one interface.
