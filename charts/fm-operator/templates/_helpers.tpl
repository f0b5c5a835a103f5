{{- define "fm-operator.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "fm-operator.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "fm-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "fm-operator.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "fm-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "fm-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "fm-operator.labels" -}}
{{ include "fm-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "fm-operator.webhookSecretName" -}}
{{- default (printf "%s-webhook" (include "fm-operator.fullname" .)) .Values.webhook.existingSecret -}}
{{- end -}}

{{- /* webhook.clusterAlertLabels as FMOP_CLUSTER_ALERT_LABELS: label=value pairs, comma-separated, sorted by label. */ -}}
{{- define "fm-operator.clusterAlertLabels" -}}
{{- $pairs := list -}}
{{- range $label, $value := . -}}
{{- if not (regexMatch "^[a-zA-Z_][a-zA-Z0-9_]*$" $label) -}}
{{- fail (printf "webhook.clusterAlertLabels: %q is not a Prometheus label name ([a-zA-Z_][a-zA-Z0-9_]*)" $label) -}}
{{- end -}}
{{- if or (contains "," (toString $value)) (not (toString $value)) -}}
{{- fail (printf "webhook.clusterAlertLabels.%s: give a non-empty value without commas (got %q)" $label (toString $value)) -}}
{{- end -}}
{{- $pairs = append $pairs (printf "%s=%s" $label (toString $value)) -}}
{{- end -}}
{{- join "," $pairs -}}
{{- end -}}

{{- /* The Secret (tls.crt, tls.key) the webhook serves HTTPS with; empty: plain HTTP. */ -}}
{{- define "fm-operator.webhookTLSSecretName" -}}
{{- if .Values.webhook.tls.secretName -}}
{{- .Values.webhook.tls.secretName -}}
{{- else if .Values.webhook.tls.certManager.enabled -}}
{{- printf "%s-webhook-tls" (include "fm-operator.fullname" .) -}}
{{- end -}}
{{- end -}}
