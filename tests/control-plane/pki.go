package main

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// serviceIP is the first address of --service-cluster-ip-range: the
// ClusterIP the apiserver gives the "kubernetes" Service, which in-cluster
// clients dial, so it belongs in the serving certificate.
var serviceIP = net.ParseIP("10.96.0.1")

// ensurePKI writes the CA, the certificates and the service-account key pair
// into dir unless a previous run left them there. Keeping them lets a
// restart on the same dir serve the data already in etcd (tokens, secrets)
// with the same identity; `rm -rf DIR` gives a fresh cluster.
func ensurePKI(dir string) error {
	if _, err := os.Stat(filepath.Join(dir, "ca.crt")); err == nil {
		return nil
	}
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	caTmpl := template("wireway-test-ca", nil)
	caTmpl.IsCA = true
	caTmpl.KeyUsage = x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature
	// No extended key usage on the CA: verifiers intersect it down the
	// chain, so "client auth" here would make the serving cert unusable.
	caTmpl.ExtKeyUsage = nil
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, caKey.Public(), caKey)
	if err != nil {
		return err
	}
	ca, _ := x509.ParseCertificate(caDER)

	serving := template("kube-apiserver", nil)
	serving.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	serving.IPAddresses = []net.IP{net.IPv4(127, 0, 0, 1), serviceIP}
	serving.DNSNames = []string{"localhost", "kubernetes", "kubernetes.default",
		"kubernetes.default.svc", "kubernetes.default.svc.cluster.local"}

	// The admin is a cluster-admin through its group, as kubeadm's is; the
	// controller-manager gets the user name that the bootstrap RBAC policy
	// binds to its ClusterRole, so it runs with its real permissions.
	admin := template("wireway-admin", []string{"system:masters"})
	kcm := template("system:kube-controller-manager", nil)
	for name, tmpl := range map[string]*x509.Certificate{"apiserver": serving, "admin": admin, "controller-manager": kcm} {
		if err := issue(dir, name, tmpl, ca, caKey); err != nil {
			return err
		}
	}

	// Service-account tokens are signed with RSA, the kubeadm default and
	// the one every JWT library verifies.
	saKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return err
	}
	saPub, err := x509.MarshalPKIXPublicKey(saKey.Public())
	if err != nil {
		return err
	}
	if err := writePEM(dir, "sa.key", "RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(saKey)); err != nil {
		return err
	}
	if err := writePEM(dir, "sa.pub", "PUBLIC KEY", saPub); err != nil {
		return err
	}
	if err := writeKey(dir, "ca.key", caKey); err != nil {
		return err
	}
	// ca.crt last: its presence is what marks the PKI as complete.
	return writePEM(dir, "ca.crt", "CERTIFICATE", caDER)
}

func template(cn string, orgs []string) *x509.Certificate {
	serial, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	return &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: cn, Organization: orgs},
		// An hour back absorbs clock skew; ten years outlives any test dir.
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(10 * 365 * 24 * time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
	}
}

// issue signs tmpl with the CA and writes NAME.crt and NAME.key.
func issue(dir, name string, tmpl, ca *x509.Certificate, caKey crypto.Signer) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, key.Public(), caKey)
	if err != nil {
		return err
	}
	if err := writeKey(dir, name+".key", key); err != nil {
		return err
	}
	return writePEM(dir, name+".crt", "CERTIFICATE", der)
}

func writeKey(dir, name string, key *ecdsa.PrivateKey) error {
	der, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return err
	}
	return writePEM(dir, name, "EC PRIVATE KEY", der)
}

func writePEM(dir, name, kind string, der []byte) error {
	return os.WriteFile(filepath.Join(dir, name), pem.EncodeToMemory(&pem.Block{Type: kind, Bytes: der}), 0o600)
}

// writeKubeconfig writes a kubeconfig for the client certificate NAME.crt,
// with everything embedded so that the file can be copied on its own. It is
// written under a temporary name and renamed, so a reader never sees half.
func writeKubeconfig(dir, name, path, server string) error {
	var files [3][]byte
	for i, f := range []string{"ca.crt", name + ".crt", name + ".key"} {
		b, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil {
			return err
		}
		files[i] = b
	}
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["wireway-test"] = &clientcmdapi.Cluster{Server: server, CertificateAuthorityData: files[0]}
	cfg.AuthInfos[name] = &clientcmdapi.AuthInfo{ClientCertificateData: files[1], ClientKeyData: files[2]}
	cfg.Contexts["wireway-test"] = &clientcmdapi.Context{Cluster: "wireway-test", AuthInfo: name, Namespace: "default"}
	cfg.CurrentContext = "wireway-test"
	tmp := path + ".tmp"
	if err := clientcmd.WriteToFile(*cfg, tmp); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
