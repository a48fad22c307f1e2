{{/*
Names. The full name prefixes every object; DNS labels are at most 63 characters and a
StatefulSet's pods add "-<ordinal>" and a controller-revision-hash label, so it is cut at 52.
*/}}
{{- define "chronicle.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" -}}
{{- else if contains "chronicle" .Release.Name -}}
{{- .Release.Name | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-chronicle" .Release.Name | trunc 52 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "chronicle.membersService" -}}
{{- printf "%s-members" (include "chronicle.fullname" .) -}}
{{- end -}}

{{- define "chronicle.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
The two labels that select the node pods. The chaos harness selects pods by exactly these
(app.kubernetes.io/name=chronicle, app.kubernetes.io/instance=<release>), so they are not
configurable, and nothing else the chart runs (hook Jobs, NATS) carries both.
*/}}
{{- define "chronicle.selectorLabels" -}}
app.kubernetes.io/name: chronicle
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "chronicle.labels" -}}
{{ include "chronicle.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: chronicle
helm.sh/chart: {{ include "chronicle.chart" . }}
{{- end -}}

{{/* Labels of the hook Jobs' pods: not the node selector (name differs). */}}
{{- define "chronicle.hookLabels" -}}
app.kubernetes.io/name: chronicle-scale
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: scale-hook
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: chronicle
helm.sh/chart: {{ include "chronicle.chart" . }}
{{- end -}}

{{- define "chronicle.image" -}}
{{- $tag := .Values.image.tag | default .Chart.AppVersion -}}
{{- if .Values.image.digest -}}
{{- printf "%s:%s@%s" .Values.image.repository $tag .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}
{{- end -}}

{{- define "chronicle.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- .Values.serviceAccount.name | default (include "chronicle.fullname" .) -}}
{{- else -}}
{{- .Values.serviceAccount.name | default "default" -}}
{{- end -}}
{{- end -}}

{{/* Secrets and where they are mounted. */}}
{{- define "chronicle.authSecretName" -}}
{{- .Values.auth.existingSecret | default (printf "%s-auth" (include "chronicle.fullname" .)) -}}
{{- end -}}

{{- define "chronicle.tlsSecretName" -}}
{{- .Values.tls.existingSecret | default (printf "%s-tls" (include "chronicle.fullname" .)) -}}
{{- end -}}

{{- define "chronicle.secretsDir" -}}/etc/chronicle/secrets{{- end -}}
{{- define "chronicle.tlsDir" -}}/etc/chronicle/tls{{- end -}}
{{- define "chronicle.natsDir" -}}/etc/chronicle/nats{{- end -}}
{{- define "chronicle.configDir" -}}/etc/chronicle/config{{- end -}}
{{- define "chronicle.dataDir" -}}/var/lib/chronicle{{- end -}}

{{- define "chronicle.scheme" -}}
{{- if .Values.tls.enabled -}}https{{- else -}}http{{- end -}}
{{- end -}}

{{/* The client Service's in-cluster URL (the hook Jobs and NOTES use it). */}}
{{- define "chronicle.clientUrl" -}}
{{- printf "%s://%s.%s.svc.%s:8086" (include "chronicle.scheme" .) (include "chronicle.fullname" .) .Release.Namespace .Values.clusterDomain -}}
{{- end -}}

{{/*
NATS. The bundled subchart names its objects "<release>-nats" (charts/nats/templates/_helpers.tpl);
the same formula here finds its Service and token Secret.
*/}}
{{- define "chronicle.natsBundledName" -}}
{{- printf "%s-nats" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "chronicle.natsUrl" -}}
{{- if .Values.nats.enabled -}}
{{- printf "nats://%s.%s.svc.%s:4222" (include "chronicle.natsBundledName" .) .Release.Namespace .Values.clusterDomain -}}
{{- else -}}
{{- .Values.nats.url -}}
{{- end -}}
{{- end -}}

{{- define "chronicle.natsTokenSecret" -}}
{{- .Values.nats.auth.existingSecret | default (printf "%s-auth" (include "chronicle.natsBundledName" .)) -}}
{{- end -}}

{{/* Whether a NATS credential is mounted as a file. */}}
{{- define "chronicle.natsFileCredentials" -}}
{{- if and (not .Values.nats.enabled) .Values.nats.credentials.existingSecret (or .Values.nats.credentials.credsKey .Values.nats.credentials.nkeySeedKey .Values.nats.credentials.caKey) -}}true{{- end -}}
{{- end -}}

{{/*
Refuses values that cannot make a working cluster, at render time, with a message that
says what to change. Included by the StatefulSet.
*/}}
{{- define "chronicle.validate" -}}
{{- if lt (int .Values.replicas) (int .Values.initialMembers) -}}
{{- fail (printf "replicas (%d) is below initialMembers (%d): the founding members 1..%d must keep running (their volumes hold the cluster). Scale in to %d at the least." (int .Values.replicas) (int .Values.initialMembers) (int .Values.initialMembers) (int .Values.initialMembers)) -}}
{{- end -}}
{{- if and (not .Values.nats.enabled) (not .Values.nats.url) -}}
{{- fail "NATS: set nats.url to an existing NATS, or nats.enabled=true for the bundled one" -}}
{{- end -}}
{{- if and .Values.nats.enabled .Values.nats.url -}}
{{- fail "NATS: nats.url is for an existing NATS; set nats.enabled=false to use it (the bundled NATS is on)" -}}
{{- end -}}
{{- if and .Values.nats.user (not .Values.nats.credentials.passwordKey) -}}
{{- fail "NATS: nats.user needs nats.credentials.passwordKey (and existingSecret)" -}}
{{- end -}}
{{- $c := .Values.nats.credentials -}}
{{- if and (not $c.existingSecret) (or $c.passwordKey $c.tokenKey $c.credsKey $c.nkeySeedKey $c.caKey) -}}
{{- fail "NATS: nats.credentials keys are set but nats.credentials.existingSecret is empty" -}}
{{- end -}}
{{- if and .Values.tls.enabled (not .Values.tls.existingSecret) (not .Values.tls.certManager.enabled) -}}
{{- fail "TLS: tls.enabled needs tls.existingSecret or tls.certManager.enabled" -}}
{{- end -}}
{{- if and .Values.tls.enabled .Values.tls.existingSecret .Values.tls.certManager.enabled -}}
{{- fail "TLS: give tls.existingSecret or tls.certManager.enabled, not both" -}}
{{- end -}}
{{- if and .Values.tls.enabled .Values.tls.certManager.enabled (not .Values.tls.certManager.issuerRef.name) -}}
{{- fail "TLS: tls.certManager.issuerRef.name is empty" -}}
{{- end -}}
{{- if and .Values.serviceMonitor.enabled .Values.auth.enabled (not .Values.serviceMonitor.tokenSecret.name) -}}
{{- fail "ServiceMonitor: /metrics needs a token with auth on; create one (chronicle token create --name prometheus --role reader --feature metrics), store it in a Secret and set serviceMonitor.tokenSecret.name" -}}
{{- end -}}
{{- /* The identity recorded at install (see identity-configmap.yaml) must not change. */ -}}
{{- $identity := lookup "v1" "ConfigMap" .Release.Namespace (printf "%s-identity" (include "chronicle.fullname" .)) -}}
{{- if and $identity $identity.data -}}
{{- $recorded := index $identity.data "initialMembers" | default "" -}}
{{- if and $recorded (ne $recorded (toString (int .Values.initialMembers))) -}}
{{- fail (printf "initialMembers is %d but this release was created with %s: it cannot change (pass --reuse-values, or the values file the release was installed with, to helm upgrade)" (int .Values.initialMembers) $recorded) -}}
{{- end -}}
{{- $shards := index $identity.data "shards" | default "" -}}
{{- if ne $shards (include "chronicle.shardsText" .) -}}
{{- fail (printf "cluster.shards is %q but this release was created with %q: it cannot change" (include "chronicle.shardsText" .) $shards) -}}
{{- end -}}
{{- $replication := index $identity.data "replication" | default "" -}}
{{- if and $replication (ne $replication (toString (int .Values.cluster.replication))) -}}
{{- fail (printf "cluster.replication is %d but this release was created with %s: it cannot change" (int .Values.cluster.replication) $replication) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "chronicle.shardsText" -}}
{{- if kindIs "invalid" .Values.cluster.shards -}}default{{- else -}}{{ int .Values.cluster.shards }}{{- end -}}
{{- end -}}

{{/* The comma-separated founding members: 1,2,...,initialMembers. */}}
{{- define "chronicle.initialNodes" -}}
{{- $ids := list -}}
{{- range $i := until (int .Values.initialMembers) -}}
{{- $ids = append $ids (toString (add1 $i)) -}}
{{- end -}}
{{- join "," $ids -}}
{{- end -}}

{{/* A word quoted for the POSIX shell: 'it'\''s'. */}}
{{- define "chronicle.shquote" -}}
{{- printf "'%s'" (replace "'" "'\\''" (toString .)) -}}
{{- end -}}
