//! Mesh certificate authorities: builtin and provided CAs, CSR signing, trust bundles.
