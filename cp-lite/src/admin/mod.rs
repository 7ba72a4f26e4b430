//! The admin server (default port 5679, loopback only): dataplane tokens and CA management.
